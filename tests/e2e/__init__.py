"""Browser and server tests: the app in headless Chromium, its Gradio API, notebook 01 in JupyterLab."""
