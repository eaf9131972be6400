from setuptools import find_packages, setup

setup(
    name="tornado_gateway",
    version="0.1.0",
    description="Public edge of the chat application: HTTP proxy, JWT, Socket.IO fan-out over Redis",
    packages=find_packages(include=["tornado_gateway", "tornado_gateway.*"]),
    python_requires=">=3.11",
    install_requires=[
        "tornado>=6.6,<7",
        "python-socketio>=5.18,<6",
        "python-engineio>=4.15,<5",
        "pyjwt>=2.10,<3",
        "redis[hiredis]>=5.2,<9",
        "orjson>=3.10,<4",
        "tornado-http-auth>=1.1,<2",
        "prometheus-client>=0.20,<1",
        "python-dotenv>=1.0,<2",
        "uvloop>=0.19; sys_platform != 'win32'",
    ],
    extras_require={
        "test": [
            "pytest>=8,<9",
            "pytest-tornado>=0.8,<0.9",
            "python-socketio>=5.18,<6",  # its asyncio client needs aiohttp, listed next
            "aiohttp>=3.9,<4",
            "hypothesis>=6.100,<7",
            "mypy>=1.10,<3",
            "supervisor>=4.2,<5",
        ],
    },
    entry_points={"console_scripts": ["tornado-gateway=tornado_gateway.__main__:main"]},
)
