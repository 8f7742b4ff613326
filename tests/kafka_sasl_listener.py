"""A loopback listener that speaks just enough of the Kafka protocol (ApiVersions,
SaslHandshake, SaslAuthenticate, with kafka-python's own message classes) to record the
SASL/PLAIN credentials a client presents, then refuses them. The embedded Tansu broker
cannot take SASL users here (its `user create` itself needs an authenticated
connection), so this is what shows which password a client really sends."""

from __future__ import annotations

import socket
import struct
import threading

from kafka.protocol.metadata import ApiVersionsResponse
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeResponse,
)

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
SASL_AUTHENTICATION_FAILED = 58


class SaslRecorder:
    def __init__(self) -> None:
        self.credentials: list[tuple[str, str]] = []  # (username, password) per attempt
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while (size := _recv(conn, 4)) is not None:
                frame = _recv(conn, struct.unpack(">i", size)[0])
                if frame is None:
                    return
                api_key, version, correlation_id = struct.unpack_from(">hhi", frame)
                if api_key == API_VERSIONS:
                    keys = [
                        ApiVersionsResponse.ApiVersion(api_key=k, min_version=0, max_version=m)
                        for k, m in ((API_VERSIONS, 3), (SASL_HANDSHAKE, 1), (SASL_AUTHENTICATE, 1))
                    ]
                    response = ApiVersionsResponse(error_code=0, api_keys=keys, throttle_time_ms=0)
                elif api_key == SASL_HANDSHAKE:
                    response = SaslHandshakeResponse(error_code=0, mechanisms=["PLAIN"])
                elif api_key == SASL_AUTHENTICATE:
                    token = SaslAuthenticateRequest.decode(frame, version=version, header=True)
                    _authzid, user, password = bytes(token.auth_bytes).split(b"\0", 2)
                    self.credentials.append((user.decode(), password.decode()))
                    response = SaslAuthenticateResponse(
                        error_code=SASL_AUTHENTICATION_FAILED,
                        error_message="recorded, not accepted",
                        auth_bytes=b"",
                        session_lifetime_ms=0,
                    )
                else:
                    return
                response.API_VERSION = version  # before the header: see kafka-python's setter
                response.with_header(correlation_id=correlation_id)
                conn.sendall(response.encode(header=True, framed=True))


def _recv(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
