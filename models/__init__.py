"""Recipes that build the models the project tests and evaluates with (need the ``export`` extra),
and the independent float64 PyTorch ALTI reference (``models.reference``)."""
