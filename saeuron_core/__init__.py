"""saeuron_core: SAeUron (concept unlearning with sparse autoencoders) for diffusers pipelines.

Data flows one way: model -> hooks -> store -> SAE -> scores -> interventions -> app.
This package never imports the app (``explorer``).
"""

from .errors import SaeuronError
from .pipeline import ModelInfo, generate, load_pipeline, model_info

__all__ = ["SaeuronError", "ModelInfo", "generate", "load_pipeline", "model_info"]
