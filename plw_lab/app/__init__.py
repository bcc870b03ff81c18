"""The Gradio app: one module per tab, all calling `plw_lab.api`."""
