"""The networks: layers, DeeperGATGNN and the paper's other architectures, ensembles, and the
checkpoints that rebuild them.

==================  ==========================================================================
``layers``          AGAT, DiffGroupNorm, BatchNorm, global attention, the Gaussian expansion
``graphmodel``      `GraphModel`: the contract's featurization and target scaling, shared
``model``           DeeperGATGNN, GATGNN and the ensemble; building a model by name
``nets``            CGCNN, SchNet, MPNN, MEGNet and their Deeper variants
``reference``       the PyTorch Geometric edge-list forms the padded layers must equal
``checkpoint``      ``.ckpt`` files: write, read (weights only), rebuild, metadata
==================  ==========================================================================
"""
