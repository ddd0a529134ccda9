"""The peer of a UNIX socket, asked through sock_diag (observe/sockdiag.py). Real sockets."""

from __future__ import annotations

import os
import socket

from colab_guard.observe.sockdiag import UnixPeers


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def test_the_two_ends_of_a_unix_socket_pair_are_each_others_peer():
    a, b = socket.socketpair()
    with a, b, UnixPeers() as peers:
        assert peers.peer(_inode(a)) == _inode(b)
        assert peers.peer(_inode(b)) == _inode(a)


def test_a_client_connected_to_a_unix_server_by_path_has_the_accepted_socket_as_peer(tmp_path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s"))
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / "s"))
            accepted, _ = server.accept()
            with accepted, UnixPeers() as peers:
                assert peers.peer(_inode(client)) == _inode(accepted)
                assert peers.peer(_inode(server)) is None  # listening: no peer


def test_an_inet_socket_a_closed_one_and_no_socket_have_no_unix_peer():
    with socket.socket() as tcp, UnixPeers() as peers:
        assert peers.peer(_inode(tcp)) is None
        a, b = socket.socketpair()
        gone = _inode(a)
        a.close()
        b.close()
        assert peers.peer(gone) is None
        assert peers.peer(1) is None
