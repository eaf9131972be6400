"""``python -m tornado_gateway``: start one gateway process (``--devstack``: with stand-in services)."""

import sys

from tornado_gateway import server


def main() -> None:
    if "--devstack" in sys.argv[1:]:
        from tornado_gateway.devstack.launch import main as devstack_main

        devstack_main(sys.argv)
    server.main()


if __name__ == "__main__":
    main()
