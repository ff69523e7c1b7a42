"""``python -m retinanet_ext_cli``: the same as the ``retinanet-ext`` console script."""

import sys

from retinanet_ext_cli import main

sys.exit(main())
