"""Config sources: the local cluster's store, or a Kubernetes API server.

Both yield `shoal.store.Event`s (ADDED, MODIFIED, DELETED with the whole
object; BOOKMARK with only `metadata.resourceVersion`), so the translator is
fed the same way from either:

    async for event in source.events():
        translator.apply_event(event)

After the initial list of every kind a source yields one BOOKMARK: the
consumer then has a complete view and may push its first snapshot. After an
expired watch (410 Gone) a source lists again and yields only the
difference.
"""

from control_plane.sources.cache import Gone, ObjectCache, SourceError, WatchError

__all__ = ["Gone", "ObjectCache", "SourceError", "WatchError"]
