"""The library's user-level calls: predict, evaluate and describe files (used by notebooks and
the command line alike).

==================  ==========================================================================
``predict``         predictions of structure files and stores
``evaluate``        a model's errors on a labelled store, and how good its short list is
``metrics``         screening metrics: precision, recall and DAF of a top-K list (numpy)
``info``            ``deepergat info``: what a store, predictions file or model file holds
==================  ==========================================================================
"""
