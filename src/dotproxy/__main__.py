import sys

from dotproxy.cli.main import main

sys.exit(main())
