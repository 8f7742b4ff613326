"""Python labeling functions of the shipped tasks; a task's YAML names the modules
it uses in ``labeling.python_modules``."""
