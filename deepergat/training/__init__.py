"""Training: graph sets, the run configuration, the epoch loop, cross-validation, ensembles and
their calibration.

==================  ==========================================================================
``config``          `TrainConfig`: every setting of a run and its default (no torch)
``data``            graph sets of a store and their on-disk cache
``train``           the run: splits, the epoch loop, outputs, cross-validation, ensembles
``ensemble``        members → one ensemble; calibration of its spread
``uncertainty``     calibration maths and metrics of a spread (numpy)
==================  ==========================================================================
"""
