# Sphinx configuration of the results site (copied into the staged source by scripts/build_site.py).
project = "gs-mu-repro results"
author = "gs-mu-repro"
extensions = ["myst_nb"]
nb_execution_mode = "off"  # the notebooks were executed by the run (or carry their committed outputs)
myst_enable_extensions = ["colon_fence"]
html_theme = "alabaster"
html_title = "Gradient Slingshots & Machine Unlearning — reproduction"
html_theme_options = {"page_width": "1200px", "body_max_width": "1000px"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type", "misc.highlighting_failure"]
html_show_sourcelink = False
