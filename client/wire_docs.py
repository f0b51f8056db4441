"""The wire's documents as docarray documents, made from the plain fields of `client.wire`:
what the Flow's executors and the gRPC transport send and receive.

Importing this loads docarray (and torch, where it is installed), which an HTTP client does
without: it checks documents against the plain fields instead.
"""

# No `from __future__ import annotations` here: jina builds the gateway's schema from these
# classes at start-up and needs real (not string) annotations.
from typing import Any

from docarray import BaseDoc, DocList
from docarray.typing import NdArray
from pydantic import BaseModel, create_model
from pydantic.fields import FieldInfo

from client.wire import Array, MatchFields, SearchFields, StatusFields, replaced_type


def _document(
    name: str, fields: type[BaseModel], nested: dict[type[BaseModel], type[BaseDoc]]
) -> type[BaseDoc]:
    """A docarray document called `name` with the fields of `fields`, their types and defaults,
    in docarray's terms: an `Array` is an `NdArray`, and a list of plain documents is a `DocList`
    of their docarray documents (`nested`), empty by default."""
    definitions: dict[str, Any] = {}
    for field, info in fields.model_fields.items():
        annotation = _docarray_type(info.annotation, nested)
        # a copy: create_model sets its annotation, which would change the plain model's field
        info = FieldInfo.merge_field_infos(info)
        if info.default_factory is list:  # a DocList's empty default is an empty DocList
            info = FieldInfo.merge_field_infos(info, default_factory=annotation)
        definitions[field] = (annotation, info)
    return create_model(
        name, __base__=BaseDoc, __module__=__name__, __doc__=fields.__doc__, **definitions
    )


def _docarray_type(annotation: Any, nested: dict[type[BaseModel], type[BaseDoc]]) -> Any:
    """An `Array` is an `NdArray`, a list of plain documents a `DocList` of theirs."""
    lists = {list[plain]: DocList[doc] for plain, doc in nested.items()}
    return replaced_type(annotation, {Array: NdArray, **lists})


Match = _document("Match", MatchFields, {})
SearchDoc = _document("SearchDoc", SearchFields, {MatchFields: Match})
StatusDoc = _document("StatusDoc", StatusFields, {})
