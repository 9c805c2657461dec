"""Where an app's sources come from and where its bytes live: git checkouts, uploaded bits
(validated and normalized by :mod:`.archive`) and the blob store (:mod:`.blobs`)."""
