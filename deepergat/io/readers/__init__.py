"""Structure-file readers for `deepergat pack`: one parsed structure is a `Record`.

Work is cut into small picklable tasks so that worker processes can parse in parallel while the
main process streams: the main process only splits inputs (CSV rows, extxyz frames, ASE database
row ranges, archive members, files) and writes; `run_chunk` parses a list of tasks in a worker
and returns, per task, the parsed records or one `Failure` that names the source and the reason.

One module per format family, recognised by file name (`structure_format`) and confirmed by
content:

====================  ========================================================================
``records``           records, failures, tasks; format recognition; pymatgen/ASE → record
``cif``               CIF (``*.cif``, ``*.mcif``): every data block, as pymatgen's
                      ``Structure.from_str(s, fmt="cif")`` parses, once its sites × symmetry
                      operations are within ``MAX_CIF_ATOMS``
``cif_gemmi``         the same records from gemmi's tokenizer and numpy, several times faster
                      (gemmi is a core dependency); declines what it cannot build the same way
``poscar``            POSCAR (``POSCAR*``, ``CONTCAR*``, ``*.vasp``, ``*.poscar``)
``extxyz``            extxyz (``*.extxyz``, ``*.xyz``): frames split by atom count, ASE parses
``ase_db``            ASE databases: ``*.db`` (SQLite, cut into row ranges), ASE JSON; the
                      JSON ASE decodes is checked first (no objects but cells, no array
                      larger than its data)
``pymatgen_json``     ``*.json`` holding a pymatgen ``Structure``/``Molecule`` dict or a list,
                      built from its numbers and symbols (no class a file names is imported)
``table``             CSV (``*.csv``) with a column of CIF texts: one structure per row
``archive``           ``*.zip``, ``*.tar``, ``*.tar.gz``, ``*.tgz`` of CIF, POSCAR and extxyz
                      files, read member by member in bounded memory (member size and
                      expansion capped; every other member named)
``matdeeplearn``      MatDeepLearn folders: ``targets.csv`` beside one file per row
``samples``           CDVAE / DiffCSP ``*.pt`` sample files (`deepergat.io.generators`)
``dispatch``          the worker side: `run_chunk`, each task to its format's parser
====================  ========================================================================

Ids: a file holding one structure gives it the file's id (its stem, or its path with
``--id-from path``); a file holding several (extxyz frames, database rows, CIF data blocks, a JSON
list) gives ``<id>_<k>`` with k the 0-based position of the structure in the file. CSV rows take
the id column (``<csv path>:<id>`` with ``--id-from path``), or ``<csv id>_<k>`` with k the 0-based
data row when the file has no id column. Archive members take their stems (with path ids
``<archive>/<member path>``); sample files ``<stem>-<pass>-<index>``.

Geometry is stored exactly as the parser gives it: lattice rows and Cartesian positions in Å, not
wrapped. pymatgen structures keep their lattice's ``pbc`` (periodic on all axes unless the JSON says
otherwise); pymatgen molecules get a zero lattice and no periodicity; ASE atoms keep their ``pbc``
and cell. Disordered (partial-occupancy) structures are refused.
"""

from __future__ import annotations

from .archive import ARCHIVE_MEMBER_FORMATS, archive_tasks
from .ase_db import DB_ROWS_PER_TASK, db_row_tasks
from .dispatch import run_chunk
from .extxyz import FRAMES_PER_TASK, extxyz_tasks
from .matdeeplearn import matdeeplearn_tasks, read_matdeeplearn_targets
from .records import (
    STRUCTURE_FORMATS,
    CifTextTask,
    DbRowsTask,
    FailTask,
    Failure,
    FileTask,
    Format,
    FramesTask,
    Outcome,
    Record,
    Task,
    TextTask,
    structure_format,
)
from .table import check_csv_columns, csv_tasks, read_csv_header, resolve_id_column

__all__ = [
    "ARCHIVE_MEMBER_FORMATS",
    "DB_ROWS_PER_TASK",
    "FRAMES_PER_TASK",
    "STRUCTURE_FORMATS",
    "CifTextTask",
    "DbRowsTask",
    "FailTask",
    "Failure",
    "FileTask",
    "Format",
    "FramesTask",
    "Outcome",
    "Record",
    "Task",
    "TextTask",
    "archive_tasks",
    "check_csv_columns",
    "csv_tasks",
    "db_row_tasks",
    "extxyz_tasks",
    "matdeeplearn_tasks",
    "read_csv_header",
    "read_matdeeplearn_targets",
    "resolve_id_column",
    "run_chunk",
    "structure_format",
]
