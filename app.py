"""Hugging Face Spaces entry point: the same app as ``saeuron-explorer``, on the bundled model.

Options come from the environment: SAEURON_MODEL, SAEURON_SAE, SAEURON_STATS, SAEURON_DEFAULTS,
SAEURON_JUDGE, SAEURON_THREADS, SAEURON_RUN, SAEURON_DEVICE, SAEURON_DTYPE, SAEURON_HEIGHT,
SAEURON_WIDTH, SAEURON_PRESET. GPU-bound events go through ``explorer.zerogpu.gpu``: ZeroGPU
tasks on a ZeroGPU Space, plain calls elsewhere.
"""

import os

from explorer.app import build_app, open_session, parse_args

_FLAGS = {
    "--model": "SAEURON_MODEL",
    "--sae": "SAEURON_SAE",
    "--stats": "SAEURON_STATS",
    "--defaults": "SAEURON_DEFAULTS",
    "--judge": "SAEURON_JUDGE",
    "--threads": "SAEURON_THREADS",
    "--run": "SAEURON_RUN",
    "--device": "SAEURON_DEVICE",
    "--dtype": "SAEURON_DTYPE",
    "--height": "SAEURON_HEIGHT",
    "--width": "SAEURON_WIDTH",
    "--preset": "SAEURON_PRESET",
}
args = parse_args([x for flag, var in _FLAGS.items() if var in os.environ for x in (flag, os.environ[var])])
demo = build_app(open_session(args))

if __name__ == "__main__":
    demo.launch(server_name=args.host, server_port=args.port)
