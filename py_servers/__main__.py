import sys

from py_servers.main import main

sys.exit(main())
