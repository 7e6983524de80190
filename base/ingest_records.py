"""Registry records of an ingested raw, from its ledger row and its (merged) primary header."""

from __future__ import annotations

from astropy.io import fits

from base.header_merge import dimensions
from base.ingest_ledger import Received
from base.registry import DetectorRecord, ExposureRecord, RawRecord


def raw_records(r: Received, h: fits.Header) -> tuple[RawRecord, ExposureRecord, DetectorRecord]:
    nx, ny, namps = dimensions(h)
    camera = r.camera or str(h.get("CAMERA", ""))

    def num(key: str) -> float | None:
        value = h.get(key)
        return float(value) if isinstance(value, int | float) else None

    def whole(key: str) -> int | None:
        value = h.get(key)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    raw = RawRecord(
        visit=r.visit,
        detector=r.detector,
        camera=camera,
        image_name=r.image_name,
        path=r.path,
        checksum=r.checksum,
        file_checksum=r.file_checksum,
        byte_size=r.byte_size,
        nx=nx,
        ny=ny,
        n_amps=namps,
        header_merged=r.header_merged,
    )
    exposure = ExposureRecord(
        visit=r.visit,
        image_name=r.image_name,
        camera=camera,
        day_obs=whole("DAYOBS"),
        seq_num=whole("SEQNUM"),
        band=str(h["BAND"]) if "BAND" in h else None,
        exposure_time=num("EXPTIME"),
        mjd_start=num("MJD-BEG"),
        ra=num("RA"),
        dec=num("DEC"),
        field_id=whole("FIELDID"),
    )
    detector = DetectorRecord(
        camera=camera,
        detector=r.detector,
        name=str(h.get("DETNAME", f"det{r.detector:03d}")),
        vendor=str(h["CCD_MANU"]) if "CCD_MANU" in h else None,
        nx=nx,
        ny=ny,
    )
    return raw, exposure, detector
