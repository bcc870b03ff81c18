"""The lab's engine: config, data and masks, the loss, models, training, evaluation and run folders.

Nothing here imports gradio, ipywidgets or any module above `plw_lab.core`.
"""
