"""The networks: layers, DeeperGATGNN and the paper's other architectures, ensembles, and the
checkpoints that rebuild them.

================  ==============================================================================
``layers``        AGAT, DiffGroupNorm, BatchNorm, global attention, the Gaussian expansion
``arguments``     `RecordsArguments`: a model's constructor arguments recorded once (``config``)
``graphmodel``    `GraphModel`: the shared settings, the contract's featurization, target scaling
``deepergatgnn``  DeeperGATGNN (and the paper's GATGNN, one of its configurations)
``matdeeplearn``  the frame of the MatDeepLearn baselines and their Deeper variants
``cgcnn``         CGCNN; ``schnet``: SchNet; ``mpnn``: MPNN; ``megnet``: MEGNet
``registry``      the architectures by name: ``--arch`` and a recorded ``arch``
``ensemble``      `DeeperGATGNNEnsemble`: K members, their calibrated spread
``build``         a model from its recorded arguments
``checkpoint``    ``.ckpt`` files: write, read (weights only), rebuild, metadata
``reference``     the PyTorch Geometric edge-list forms the padded models must equal
================  ==============================================================================
"""
