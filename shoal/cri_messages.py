"""CRI protobuf message classes built from a table of field numbers, for the two CRI clients
(node_agent/cri.py and shoal/local/cri_client.py).

Each client names only the messages and fields it uses, with the field numbers of
the CRI's api.proto (no generated module: a field not named is skipped on the
wire, as protobuf does with any unknown field). Enums travel as their numbers.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
STRING, BOOL, INT64, UINT32, UINT64, INT32, BYTES, MESSAGE = (
    _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_INT32, _F.TYPE_BYTES,
    _F.TYPE_MESSAGE)
MAP = "map"  # as a field's message type: a map<string, string> field, its entry type made beside the message


def field(name, number, kind, type_name="", repeated=False):
    """One row of a message table: (field, number, type, message type or "" or MAP, repeated?)."""
    return (name, number, kind, type_name, repeated)


def build(file_name: str, messages: dict[str, list[tuple]]) -> dict[str, type]:
    """{message name: class} for `messages` ({name: [field(...)]}), in package runtime.v1, in a pool of their own."""
    file = descriptor_pb2.FileDescriptorProto(name=file_name, package="runtime.v1", syntax="proto3")
    for name, fields in messages.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            if type_name == MAP:  # map<string, string>: a nested entry type, repeated
                entry_name = "".join(part.capitalize() for part in field_name.split("_")) + "Entry"
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=STRING, label=_F.LABEL_OPTIONAL)
                entry.field.add(name="value", number=2, type=STRING, label=_F.LABEL_OPTIONAL)
                message.field.add(name=field_name, number=number, type=MESSAGE, label=_F.LABEL_REPEATED,
                                  type_name=f".runtime.v1.{name}.{entry_name}")
                continue
            message.field.add(name=field_name, number=number, type=kind,
                              type_name=f".runtime.v1.{type_name}" if type_name else None,
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"runtime.v1.{name}"))
            for name in messages}
