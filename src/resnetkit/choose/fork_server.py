"""What bench's fork server imports before it forks the measuring processes
(:func:`resnetkit.core.processes.process_context`).

Besides torch, the runtimes and resnetkit (:mod:`.pool`, imported once for every process), it moves what that
import allocated out of the garbage collector's view (``gc.freeze``, as the ``gc`` docs advise before forking):
each forked process would otherwise traverse those millions of objects in every full collection while it builds
and times its model (about 0.2 s each, with torch imported), and touch their pages, copying them. The eight
default models' cached builds took 17.8 and 19.1 s of wall time in two runs, 19.0 and 20.7 s without it
(interleaved, on a 2-core Zen 4).
"""

import gc

from . import pool  # noqa: F401

gc.freeze()
