"""SAeUron Explorer: the Gradio app on top of ``saeuron_core`` (built in a later issue)."""
