"""SAeUron Explorer: a Gradio app to inspect SAE features and edit generation live.

The app logic (``session``, ``features``, ``editing``, ``unlearn_grid``, ``unlearn_results``,
``recipes``) is plain Python with no Gradio import, so it is tested directly; ``app`` and
``panels`` only lay out components and wire events.
"""
