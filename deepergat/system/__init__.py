"""The machine and the cluster: devices, the launcher's environment, parent watching, the
output lock and files written whole.

==================  ==========================================================================
``devices``         the one device resolver and the CPU cores of a rank (no torch)
``launch``          the only reader of the launcher environment (torchrun, srun, mpiexec)
``lifeline``        worker processes that end when their parent dies
``lock``            one owner per output: a lock that works on NFS, Lustre and GPFS
``files``           file heads and digests, and files replaced only when written whole
==================  ==========================================================================
"""
