"""The library's user-level calls: predict, evaluate and describe files (used by notebooks and
the command line alike).

==================  ==========================================================================
``predict``         predictions of structure files and stores; evaluation against labels
``info``            ``deepergat info``: what a store, predictions file or model file holds
==================  ==========================================================================
"""
