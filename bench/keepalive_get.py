"""N keep-alive GETs of one path over C connections; prints how many were answered 200.

    python bench/keepalive_get.py PORT N C PATH TOKEN

A fixed number of requests (wrk runs for a fixed time), for bench/instructions.sh.
"""

import asyncio
import sys


async def connection(port: int, count: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ok = 0
    for _ in range(count):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        ok += head.startswith(b"HTTP/1.1 200 ")
    writer.close()
    return ok


async def main(port: int, total: int, connections: int, path: str, token: str) -> None:
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    counts = await asyncio.gather(*(connection(port, total // connections, request)
                                    for _ in range(connections)))
    print(sum(counts))


if __name__ == "__main__":
    port, total, connections, path, token = sys.argv[1:6]
    asyncio.run(main(int(port), int(total), int(connections), path, token))
