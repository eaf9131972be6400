"""``python -m tornado_gateway``: start one gateway process."""

from tornado_gateway.server import main

if __name__ == "__main__":
    main()
