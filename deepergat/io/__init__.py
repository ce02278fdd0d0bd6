"""Structures in: the structure store and the readers of every file format ``pack`` takes.

==================  ==========================================================================
``store``           the HDF5 structure store (docs/design.md §3): writer, reader, digest
``readers/``        file formats → structure records, one module per format family
``generators``      CDVAE/DiffCSP ``.pt`` sample files, read by a restricted unpickler
``pack``            ``deepergat pack``: inputs → one store, in parallel, nothing lost silently
==================  ==========================================================================
"""
