"""After-training pictures: the HTML report, its diagnostics and figures."""
