"""``python -m anomalib_multiclass separate ...``: see :mod:`anomalib_multiclass.separate`."""

import sys

from anomalib_multiclass.separate import main

sys.exit(main())
