"""Training: graph sets, the run's settings and splits, the epoch loop and its files,
cross-validation, ensembles and their calibration.

=================  ===========================================================================
``config``         `TrainConfig`: every setting of a run in five sections, and its default
                   (no torch)
``data``           graph sets of a store and their on-disk cache
``splits``         train / validation / test splits and the rule for runs without validation
``trainer``        one run: the `Trainer` that owns the epoch loop, signals, resume, ranks
``outputs``        the run folder's files (metrics.csv, learning curve, config.yaml, ...)
``cv``             K-fold cross-validation and ``oof.csv``
``ensembles``      training an ensemble; the out-of-fold references of its local error term
``assemble``       members → one ensemble; its local error term and calibration
``uncertainty``    calibration maths and metrics of a spread (numpy)
=================  ===========================================================================

Imports point one way: ``ensembles`` → ``cv`` → ``trainer`` → ``outputs`` → ``splits`` →
``data`` and ``config``; ``ensembles`` also uses ``assemble`` → ``uncertainty``.
"""
