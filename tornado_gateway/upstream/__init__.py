"""The upstream HTTP client: pooled keep-alive connections, HTTP/1.1 read and written by wire.py."""
