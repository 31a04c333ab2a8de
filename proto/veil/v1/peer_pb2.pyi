from veil.v1 import psi_pb2 as _psi_pb2
from veil.v1 import sum_pb2 as _sum_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
