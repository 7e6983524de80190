-- Each DiaObject version is updated once in its life (its validityEndMjdTai set when the next
-- version is stored) and each DiaObjectLast row at every new version. On full pages such an
-- update is not HOT: the new tuple goes to another page and every index gets a new entry (three
-- on DiaObject), with a full-page image for each page first touched after a checkpoint. With
-- free room on the page, and no indexed column changed (validityEndMjdTai is in no index), the
-- update stays on its page and skips the indexes. The fillfactor is a storage parameter, not a
-- column: the tables stay apdb.yaml's. CLUSTER rewrites the rows already stored into pages
-- with that room (a no-op on a new APDB), DiaObject in pixelId order: a visit's updates then
-- touch few pages (each keeps room for ~12 of its ~40 rows to be updated in one transaction).
ALTER TABLE {schema}."DiaObject" SET (fillfactor = 70);
ALTER TABLE {schema}."DiaObjectLast" SET (fillfactor = 80);
CLUSTER {schema}."DiaObject" USING "idx_DiaObject_pixelId";
CLUSTER {schema}."DiaObjectLast" USING "idx_DiaObjectLast_pixelId";
ANALYZE {schema}."DiaObject";
ANALYZE {schema}."DiaObjectLast";
