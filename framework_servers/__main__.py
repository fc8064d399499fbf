from framework_servers.main import main

raise SystemExit(main())
