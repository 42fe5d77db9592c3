"""What tox and CI run besides the tests: the quickstart's Pass@1 check and the notebooks executed top to bottom.

Run as modules from the repository root: ``python -m tools.check_quickstart runs/quickstart --min-rise 0.35``,
``python -m tools.run_notebooks``. Not part of the installed package.
"""
