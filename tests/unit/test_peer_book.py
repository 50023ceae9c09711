"""The book of peers met: one line per device, and books written before that."""
from factories import congregation
from sync.engine import PeerBook


def test_one_line_per_device_and_an_old_line_per_member_is_taken_over(tmp_path):
    (ada, bea), cid = congregation(tmp_path, names=("Ada", "Bea"))
    try:
        # A book kept before devices had lines of their own: one per member.
        ada.store.put(PeerBook.KEY, {bea.me: {"id": bea.me, "address": "127.0.0.2:8471", "source": "manual",
                                              "last_sync": 1}})
        book = PeerBook()
        book.note(ada, bea.me, "laptop-key", "127.0.0.1:9001", "manual", True)
        book.note(ada, bea.me, "phone-key", None, "manual", True)
        lines = sorted(book.view(ada), key=lambda p: p["device"])
        assert [(p["id"], p["device"], p["address"], p["name"], p["retired"]) for p in lines] == [
            (bea.me, "laptop-key", "127.0.0.1:9001", "Bea", False),
            (bea.me, "phone-key", None, "Bea", False)]
        book.save(ada)
        assert set(PeerBook()._book(ada)) == {"laptop-key", "phone-key"}
    finally:
        ada.close()
        bea.close()
