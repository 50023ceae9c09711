"""Errors the node reports to people, each with its HTTP status."""


class NodeError(Exception):
    """A request that cannot be done; `status` is the HTTP status to answer with."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Invalid(NodeError):
    status = 400


class Forbidden(NodeError):
    status = 403


class NotFound(NodeError):
    status = 404


class Conflict(NodeError):
    status = 409


class StorageFailed(NodeError):
    """Received entries that could not be written (a full disk, say)."""

    status = 507
