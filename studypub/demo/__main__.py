import sys

from studypub.demo.cli import main

sys.exit(main())
