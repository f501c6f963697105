//! Listeners: TCP (mutual TLS, server TLS or plain) and a unix socket.
