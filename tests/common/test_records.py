"""Host records in their Redis hash and in `msctl hosts --json`."""

from common.records import HostRecord, HostState


def test_a_host_record_keeps_its_certificate_through_its_hash() -> None:
    record = HostRecord(
        3, "guid-3", name="kvm3", state=HostState.CONNECTED, server="ms1", ms_list=("a", "b"),
        cert_serial="4c2f", cert_expires=1767225600.5,
    )  # fmt: skip
    fields = record.to_hash()
    assert (fields["cert_serial"], fields["cert_expires"]) == ("4c2f", "1767225600.500")
    assert HostRecord.from_hash(3, fields) == record


def test_a_record_written_before_certificates_has_none() -> None:
    record = HostRecord.from_hash(3, {"guid": "guid-3"})
    assert (record.cert_serial, record.cert_expires) == ("", 0.0)
    assert record.as_json()["cert_expires"] is None
    assert "cert_serial" not in record.as_json()
