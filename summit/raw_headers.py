"""FITS headers of simulated raws (the convention is written down in docs/raw_format.md)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from astropy.io import fits

from algorithms.render_wcs import sip_header
from config.cameras import Amplifier, Camera, Detector
from summit.schedule import SITE_LAT_DEG, SITE_LON_DEG, Visit, alt_az_pa, lst_deg

_MJD0 = datetime(1858, 11, 17)


def iso_tai(mjd: float) -> str:
    """ISO-8601 string (millisecond precision) of an MJD on the TAI scale."""
    return (_MJD0 + timedelta(days=mjd)).isoformat(timespec="milliseconds")


def section(x1: int, x2: int, y1: int, y2: int) -> str:
    """A FITS section string from 1-based inclusive bounds (reversed when x1 > x2)."""
    return f"[{x1}:{x2},{y1}:{y2}]"


#: Rubin obsid prefixes (docs/events.md); cameras without one get ``SM``.
OBS_PREFIX = {"lsstcam": "MC", "lsstcam-lite": "MC", "comcam": "CC", "latiss": "AT", "mini": "MN"}


def obs_id(camera: Camera, visit: Visit) -> str:
    """Rubin's obsid, the contract's ``imageName``: ``{prefix}_O_{dayObs}_{seqNum:06d}``."""
    prefix = OBS_PREFIX.get(camera.name, "SM")
    return f"{prefix}_O_{visit.day_obs}_{visit.visit_id % 100000:06d}"


def primary_header(
    camera: Camera, det: Detector, visit: Visit, wcs_params: Callable[..., dict[str, object]]
) -> fits.Header:
    """Exposure metadata (DMS-REQ-0068) plus the nominal WCS from the commanded pointing."""
    from summit.camera import Pointing

    mjd_end = visit.mjd_start + visit.exptime / 86400.0
    alt, az, _ = alt_az_pa(visit.ra, visit.dec, visit.mjd_start)
    h = fits.Header()
    cards: list[tuple[str, object, str]] = [
        ("ORIGIN", "dmcs camera simulator", "who wrote this file"),
        ("TELESCOP", camera.telescope, ""),
        ("INSTRUME", camera.name, "camera"),
        ("CAMERA", camera.name, "camera configuration name"),
        ("OBSID", obs_id(camera, visit), "observation id"),
        ("IMGTYPE", "OBJECT", ""),
        ("EXPID", visit.visit_id, "exposure id = DAYOBS * 100000 + SEQNUM"),
        ("VISIT", visit.visit_id, "visit id (one exposure per visit)"),
        ("DAYOBS", visit.day_obs, "observing day (UTC-12h)"),
        ("SEQNUM", visit.visit_id % 100000, "sequence number in the day"),
        ("OBSERVID", visit.observation_id, "OpSim observationId"),
        ("FIELDID", visit.field_id, "simulated field index"),
        ("DETECTOR", det.id, "detector number"),
        ("DETNAME", det.name, "raft_sensor"),
        ("CCD_MANU", det.vendor, "CCD vendor"),
        ("DETSIZE", section(1, det.nx, 1, det.ny), "assembled CCD size"),
        ("NAMPS", len(det.amplifiers), "amplifier HDUs that follow"),
        ("FPX_MM", det.fp_x_mm, "[mm] CCD centre, focal-plane x"),
        ("FPY_MM", det.fp_y_mm, "[mm] CCD centre, focal-plane y"),
        ("PIXSCALE", camera.pixel_scale_arcsec, "[arcsec/pixel] nominal"),
        ("BAND", visit.band, "physical filter band"),
        ("FILTER", visit.band, ""),
        ("TIMESYS", "TAI", "all times are TAI"),
        ("MJD-OBS", visit.mjd_start, "[d] start of exposure (TAI)"),
        ("MJD-BEG", visit.mjd_start, "[d] start of exposure (TAI)"),
        ("MJD-END", mjd_end, "[d] end of exposure (TAI)"),
        ("DATE-OBS", iso_tai(visit.mjd_start), "start of exposure (TAI)"),
        ("DATE-BEG", iso_tai(visit.mjd_start), "start of exposure (TAI)"),
        ("DATE-END", iso_tai(mjd_end), "end of exposure (TAI)"),
        ("EXPTIME", visit.exptime, "[s] exposure time"),
        ("DARKTIME", visit.exptime + camera.readout_time_s, "[s] dark time"),
        ("RA", visit.ra, "[deg] commanded boresight RA (ICRS)"),
        ("DEC", visit.dec, "[deg] commanded boresight Dec (ICRS)"),
        ("ROTPA", visit.rot_sky_pos, "[deg] commanded rotSkyPos"),
        ("RADESYS", "ICRS", ""),
        ("AIRMASS", visit.airmass, "airmass at start"),
        ("ELSTART", alt, "[deg] elevation at start"),
        ("AZSTART", az, "[deg] azimuth at start"),
        ("LST", lst_deg(visit.mjd_start) / 15.0, "[h] local sidereal time at start"),
        ("OBS-LAT", SITE_LAT_DEG, "[deg] site latitude"),
        ("OBS-LONG", SITE_LON_DEG, "[deg] site longitude"),
        ("SEEING", visit.seeing_eff, "[arcsec] scheduler seeing (FWHMeff)"),
        ("SKYBRITE", visit.sky_brightness, "[mag/arcsec2] scheduler sky brightness"),
    ]
    for key, value, comment in cards:
        h[key] = (value, comment)
    nominal = sip_header(**wcs_params(det, Pointing(visit.ra, visit.dec, visit.rot_sky_pos)))  # type: ignore[arg-type]
    h["WCSNAME"] = ("NOMINAL", "commanded pointing, assembled pixels")
    for key, value in nominal.items():
        h[key] = value
    return h


def amp_header(det: Detector, a: Amplifier) -> fits.Header:
    """Geometry and electronics of one amplifier HDU (1-based, inclusive FITS sections)."""
    rows, cols = a.raw_shape
    dx1, dx2 = (a.x0 + a.nx, a.x0 + 1) if a.flip_x else (a.x0 + 1, a.x0 + a.nx)
    dy1, dy2 = (a.y0 + a.ny, a.y0 + 1) if a.flip_y else (a.y0 + 1, a.y0 + a.ny)
    h = fits.Header()
    h["EXTNAME"] = (a.name, "amplifier")
    h["DATASEC"] = (section(a.prescan + 1, a.prescan + a.nx, 1, a.ny), "imaging pixels")
    h["BIASSEC"] = (section(a.prescan + a.nx + 1, cols, 1, a.ny), "serial overscan")
    h["PREPSEC"] = (section(1, a.prescan, 1, a.ny) if a.prescan else "", "serial prescan")
    h["POVERSEC"] = (
        section(a.prescan + 1, a.prescan + a.nx, a.ny + 1, rows) if a.parallel_overscan else "",
        "parallel overscan",
    )
    h["DETSEC"] = (section(dx1, dx2, dy1, dy2), "DATASEC in the assembled CCD")
    h["DETSIZE"] = (section(1, det.nx, 1, det.ny), "assembled CCD size")
    h["GAIN"] = (round(a.gain, 5), "[e-/ADU]")
    h["RDNOISE"] = (round(a.read_noise, 4), "[e-] read noise")
    h["SATURATE"] = (a.saturation_adu, "[ADU] raw level at and above which saturated")
    h["BUNIT"] = ("adu", "")
    return h
