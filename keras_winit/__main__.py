"""`python -m keras_winit ...` runs the `keras-winit` command line."""

import sys

from keras_winit.cli import main

sys.exit(main())
