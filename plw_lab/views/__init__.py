"""What the app, the notebooks and the CLI show: histories, chart figures, token and text views.

Views read `plw_lab.core` (the metrics registry above all) and never train or score.
"""
