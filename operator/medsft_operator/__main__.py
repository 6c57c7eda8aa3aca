"""``python -m medsft_operator``: run the operator (see :mod:`medsft_operator.main`)."""

import sys

from medsft_operator.main import main

sys.exit(main())
