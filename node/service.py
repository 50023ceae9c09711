"""What a member can do on their node: every action writes one signed entry.

A `Service` is single-threaded (SQLite connection and pycrdt documents stay on one thread);
`worker.NodeThread` runs it on its own thread for the web app and the sync listener.
"""
import datetime as dt
import hashlib
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pycrdt import Doc, Map

from . import lifecycle, views
from .docstate import DocState, gone_from_congregation, moved_away, names_for
from .entries import build_entry
from .errors import Conflict, Forbidden, Invalid, NotFound
from .identity import load_or_create_identity, raw_public, verify
from .homelock import lock_home
from .ids import b32, new_id, now_ms, unb32
from .ledger import Ledger
from .rules import (bind_record_id, INVITE_MAX_DAYS, MAX_NAME, MAX_REASON, MAX_TEXT, MAX_TITLE, Refused, check_date,
                    check_member_id, check_text, invite_message)
from .store import Store

INVITE_DAYS = 7
RETIRED_NOTE = "device_retired"                  # kv: a peer's refusal of this device as retired
KEEP = object()                                   # Service.revise: a field not given stays as it is
NOT_ASKED = ("this round began before you were a member, or while you were away: it is for those who were "
             "in then; a new version of its text asks everyone who is in now")
CLOCK_SKEW_MS = 10 * 60_000                       # see Service._clock
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"   # no 0/O, 1/I/L: read aloud without doubt


def normalize_code(code: str) -> str:
    """An invite code as typed by a person: case, spaces and dashes do not matter."""
    return re.sub(r"[^A-Z0-9]", "", str(code).upper())


def invite_key(code: str) -> Ed25519PrivateKey:
    """The signing key an invite code stands for; knowing the code is holding the key."""
    seed = hashlib.sha256(b"crewnode-invite-v1:" + normalize_code(code).encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def new_invite_code() -> str:
    """A 12-character code in three groups, about 59 bits: short enough to read aloud."""
    chars = "".join(CODE_ALPHABET[b % len(CODE_ALPHABET)] for b in os.urandom(12))
    return f"{chars[:4]}-{chars[4:8]}-{chars[8:]}"


class Service:
    """One member's node: identity, store, documents and the actions on them."""

    def __init__(self, home: Path, name: str | None = None):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        lock = lock_home(self.home)
        try:
            self.identity = load_or_create_identity(self.home)
            self.store = Store(self.home / "crewnode.db", hold=lock)    # the home is held while its store is open
        except BaseException:
            lock.close()
            raise
        self.ledger = Ledger(self.store)
        self.store.on_lost_writes = self._forget_unstored
        self._last_at = self.store.db.execute(
            "SELECT COALESCE(MAX(at), 0) FROM entries WHERE device = ?", [self.identity.device_id]).fetchone()[0]
        self.sync_port: int | None = None
        self.revision = 0
        self.listeners: list = []
        self._finalizing = False
        if name:
            self.set_name(name)
        elif not self.store.get("name"):
            self.store.put("name", "")

    @property
    def me(self) -> str:
        return self.identity.person_id

    @property
    def states(self) -> dict[str, DocState]:
        return self.ledger.states

    def close(self) -> None:
        """Snapshot every document and close the store (closed even if the snapshots fail)."""
        try:
            self.ledger.snapshot()
        finally:
            self.store.close()

    def idle(self) -> None:
        """Work that waits for a quiet moment (worker.NodeThread calls it): recomputes put off
        (Ledger.run_due), facts snapshots."""
        if self.ledger.run_due():
            self._tell_listeners()
            self._finalize_removals()                   # (one the recompute made agreed)
        self.ledger.save_facts_due()

    def changed(self, entries) -> None:
        """Tell listeners (live page, sync push) that entries were accepted (Entry objects, or
        batches.ContentRun for several), and carry out any removal that has just been agreed."""
        if not entries:
            return
        self.revision += 1
        for listener in list(self.listeners):
            listener(entries)
        self._finalize_removals()

    def _finalize_removals(self) -> None:
        """Carry out any removal agreed and not yet in effect (not again from within: its cut
        is an entry accepted here too)."""
        if not self._finalizing:
            self._finalizing = True
            try:
                lifecycle.finalize_removals(self)
            finally:
                self._finalizing = False

    def _forget_unstored(self) -> None:
        """A batch written behind could not be stored: go back to what is stored, and tell
        listeners, so that a page showing those entries shows what is held."""
        self.ledger.reload()
        self._tell_listeners()

    def _tell_listeners(self) -> None:
        """What is held changed, though no entry was accepted: pages showing it refresh."""
        self.revision += 1
        for listener in list(self.listeners):
            listener([])

    # -- writing ---------------------------------------------------------------------------

    def _write(self, doc: str, op: dict, content: dict | None = None) -> "object":
        """Sign and store one entry of mine in `doc`; `content` sets keys of the shared meta map."""
        state = self.states[doc]
        seq, prev = self.ledger.heads.get((doc, self.identity.device_id), (0, ""))
        body = b""
        if content:
            before = state.ydoc.get_state()
            with state.ydoc.transaction():
                for key, value in content.items():
                    state.meta[key] = value
            body = state.ydoc.get_update(before)
        bind_record_id(op, doc, self.identity.device_id, seq + 1)
        entry = build_entry(self.identity, doc, seq + 1, prev, self._clock(state.latest_at), op, body,
                            with_cert=seq == 0)
        try:
            self.ledger.append(entry)
        except Refused as exc:
            raise Invalid(str(exc)) from None
        self.changed([entry])
        return entry

    def _clock(self, seen: int = 0) -> int:
        """The time of my next entry: later than my previous one, even within one millisecond or
        after the wall clock stepped back, so my own successive changes count in the order made
        ("latest wins" settles facts by entry time); and later than `seen`, the latest entry of
        the document, so what I write after reading it comes after it (a removal proposed after
        a member left knows they left), unless that entry is from more than CLOCK_SKEW_MS ahead
        of my clock: a clock far ahead must not drag every member's along."""
        now = now_ms()
        self._last_at = max(now, self._last_at + 1, seen + 1 if seen <= now + CLOCK_SKEW_MS else 0)
        return self._last_at

    def _genesis(self, op: dict, content: dict) -> str:
        scratch = Doc()
        meta = scratch.get("meta", type=Map)
        with scratch.transaction():
            for key, value in content.items():
                meta[key] = value
        op = {**op, "nonce": new_id(), "name": self.my_name() or None}
        entry = build_entry(self.identity, "", 1, "", self._clock(), op, scratch.get_update(), with_cert=True)
        try:
            self.ledger.append(entry)
        except Refused as exc:
            raise Invalid(str(exc)) from None
        self.changed([entry])
        return entry.hash

    # -- me --------------------------------------------------------------------------------

    def my_name(self) -> str:
        return self.store.get("name", "") or ""

    def me_view(self) -> dict:
        """GET /api/me."""
        return {"id": self.me, "name": self.my_name(), "device": self.identity.device_id,
                "sync_port": self.sync_port, "device_retired": self.device_retired()}

    def note_retired(self, by: str) -> None:
        """A node of member `by` refused this device as retired: it holds the retirement, which
        may not have reached this node (the only way here would be a sync it now refuses)."""
        self.store.put(RETIRED_NOTE, {"by": by, "by_name": self._name_anywhere(by), "at": views.iso(now_ms())})

    def device_retired(self) -> dict | None:
        """{"by", "by_name", "at"} when this device is known to be retired (by a peer's refusal, or
        by its retirement held here: then "by" is None), else None."""
        from .carry import retired_devices
        if self.identity.device_id in retired_devices(self.states):
            return {"by": None, "by_name": None, "at": None}
        return self.store.get(RETIRED_NOTE)

    def _name_anywhere(self, member: str) -> str:
        """A member's name as any document held here has it."""
        for state in self.states.values():
            if member in state.members:
                return state.name_of(member)
        return f"member {member[:8]}"

    def set_name(self, name) -> dict:
        """Rename me here and in every congregation I belong to."""
        name = _valid(check_text, name, "name", MAX_NAME)
        self.store.put("name", name)
        for state in list(self.states.values()):
            if state.type == "congregation" and self._is_active(state) and state.names.get(self.me, (0, ""))[1] != name:
                self._write(state.id, {"t": "name", "name": name})
        return self.me_view()

    def _is_active(self, state: DocState, member: str | None = None) -> bool:
        found = state.members.get(member or self.me)
        return found is not None and found.status == "active"

    # -- congregations -----------------------------------------------------------------------

    def congregation_state(self, cid: str) -> DocState:
        """The congregation, if I hold it; else NotFound."""
        state = self.states.get(cid)
        if state is None or state.type != "congregation" or self.me not in state.members:
            raise NotFound(f"no congregation {cid} here")
        return state

    def crew_state(self, crew_id: str) -> DocState:
        """The crew, if I am one of its members; else NotFound."""
        state = self.states.get(crew_id)
        if state is None or state.type != "crew" or self.me not in state.members:
            raise NotFound(f"no crew {crew_id} here")
        return state

    def cut_off(self, state: DocState) -> str | None:
        """For a crew a split moved to a congregation I did not go to: that congregation's name."""
        return moved_away(self.states, state, self.me) if state.type == "crew" else None

    def _writable(self, state: DocState, leaving: bool = False) -> None:
        if not self._is_active(state):
            raise Forbidden(f"you are no longer an active member of this {state.type}")
        went = None if leaving else self.cut_off(state)
        if went:
            raise Forbidden(f"this crew went to {went} when it split off, and you are not in that congregation: "
                            "what you write here would reach no one (you can leave the crew)")

    def list_congregations(self) -> list[dict]:
        """GET /api/congregations."""
        out = []
        for state in self.states.values():
            if state.type == "congregation" and self.me in state.members:
                out.append({"id": state.id, "name": state.meta_value("name"), "purpose": state.meta_value("purpose"),
                            "member_count": len(state.active_members()), "forked_from": state.forked_from,
                            "my_status": state.members[self.me].status})
        return sorted(out, key=lambda c: c["name"].lower())

    def create_congregation(self, name, purpose) -> dict:
        """POST /api/congregations: I found it and am its first member."""
        name = _valid(check_text, name, "name", MAX_TITLE)
        purpose = _valid(check_text, purpose if purpose is not None else "", "purpose", MAX_TEXT, required=False)
        cid = self._genesis({"t": "genesis", "type": "congregation"}, {"name": name, "purpose": purpose})
        return self.congregation_view(cid)

    def crews_of(self, cid: str) -> list[DocState]:
        """Crews of a congregation that I am a member of."""
        return [s for s in self.states.values()
                if s.type == "crew" and s.congregation == cid and self.me in s.members]

    def congregation_view(self, cid: str) -> dict:
        """GET /api/congregations/{cid}."""
        state = self.congregation_state(cid)
        crews = sorted(self.crews_of(cid), key=lambda c: c.meta_value("name").lower())
        return {"id": cid, "name": state.meta_value("name"), "purpose": state.meta_value("purpose"),
                "forked_from": state.forked_from, "members": views.member_list(state),
                "crews": [views.crew_summary(c) for c in crews],
                "agreements": views.agreements_view(state),
                "open_invites": views.open_invites(state, now_ms()),
                "my_status": state.members[self.me].status,
                **self.changes_view(state)}

    def changes_view(self, state: DocState, names: DocState | None = None, void: list | None = None) -> dict:
        """Lineage, inherited agreements, forked logs and entries that do not count, for people to
        see (`void`: the entries that do not count, when the caller has them already)."""
        names = names or state
        void = self.void_view(state, names) if void is None else void
        forks = [{**fork, "member_name": names.name_of(fork["member"]) if fork["member"] else None}
                 for fork in state.forks]
        parent = None
        if state.lineage:
            parent = {"id": state.lineage["id"], "name": state.lineage.get("name", ""),
                      "held_here": state.lineage["id"] in self.states}
        children = [{**split, "at": views.iso(split["at"])} for split in state.splits]
        return {"lineage": {"parent": parent, "children": children}, "inherited": state.inherited,
                "forks": forks, "void_entries": void}

    def void_view(self, state: DocState, names: DocState | None = None) -> list[dict]:
        """The document's held entries that do not count, newest first, each with who, when, what
        and why. The store is asked only when the document holds any (`state.void` lists them)."""
        from .entries import decode_entry
        if not state.void:
            return []
        names = names or state
        void = []
        for author, raw, reason in self.store.void_entries(state.id):
            entry = decode_entry(raw)
            void.append({"hash": entry.hash, "author": author, "author_name": names.name_of(author),
                         "at": views.iso(entry.at), "summary": summarize(entry, state, names), "reason": reason})
        return void

    def history(self, doc_id: str, limit: int = 500) -> list[dict]:
        """GET /api/congregations/{cid}/history: entries newest first, with a line each."""
        state = self.states.get(doc_id)
        if state is None or self.me not in state.members:
            raise NotFound(f"no congregation or crew {doc_id} here")
        names = names_for(self.states, state)
        out = []
        from .entries import decode_entry
        for author, device, seq, at, raw, void in self.store.history(doc_id, limit):
            entry = decode_entry(raw)
            out.append({"author": author, "author_name": names.name_of(author), "device": device,
                        "seq": seq, "at": views.iso(at), "summary": summarize(entry, state, names),
                        "void": void})
        return out

    # -- invites -------------------------------------------------------------------------------

    def create_invite(self, cid: str, note="", days=INVITE_DAYS) -> dict:
        """POST /api/congregations/{cid}/invites: a single-use code, valid for `days` (a week)."""
        state = self.congregation_state(cid)
        self._writable(state)
        note = _valid(check_text, note or "", "note", MAX_REASON, required=False)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= INVITE_MAX_DAYS:
            raise Invalid(f"days must be a whole number of days from 1 to {INVITE_MAX_DAYS}")
        code = new_invite_code()
        expires = now_ms() + days * 86_400_000
        key = b32(raw_public(invite_key(code)))
        self._write(cid, {"t": "invite", "key": key, "expires": expires, "note": note})
        return {"code": code, "key": key, "expires": views.iso(expires), "congregation_id": cid}

    def withdraw_invite(self, cid: str, key: str) -> dict:
        """DELETE /api/congregations/{cid}/invites/{key}: a code still open can no longer be used
        to join through any member's node that has heard of the withdrawal."""
        state = self.congregation_state(cid)
        self._writable(state)
        invite = state.invites.get(key)
        if invite is None:
            raise NotFound("no invite of this congregation has that key")
        if key not in state.withdrawn:
            if invite["used_by"] is not None:
                raise Conflict(f"this invite was already used by {state.name_of(invite['used_by'])}: "
                               "it cannot be withdrawn")
            if invite["expires"] < now_ms():
                raise Conflict("this invite has expired already: nobody can join with it")
            self._write(cid, {"t": "withdraw", "invite": key})
        return {"key": key, "withdrawn": True, "congregation_id": cid}

    def find_invite(self, key: str):
        """(congregation state, invite) for an invite key, or a clear refusal."""
        for state in self.states.values():
            invite = state.invites.get(key) if state.type == "congregation" else None
            if invite is not None:
                if key in state.withdrawn:
                    raise Conflict("this invite code was withdrawn by the congregation; ask for a new one")
                if invite["used_by"] is not None:
                    raise Conflict("this invite code has already been used")
                if invite["expires"] < now_ms():
                    raise Conflict("this invite code has expired; ask for a new one")
                return state, invite
        raise NotFound("this invite code is not known here: check it, or ask for a new one")

    def admit(self, key: str, member: str, name: str, proof: bytes, cert: dict | None = None) -> str:
        """Admit a newcomer who proved they hold the invite code for `key`; returns the congregation id.

        `cert`, the newcomer's device certificate, travels in the admission so that members can
        seal bundles for them before they have written anything.
        """
        state, _ = self.find_invite(key)
        self._writable(state)
        member = _valid(check_member_id, member)
        if self._is_active(state, member):
            return state.id
        if not verify(unb32(key), proof, invite_message(key, member)):
            raise Forbidden("the invite proof does not hold: the code is wrong or forged")
        name = (name or "")[:MAX_NAME] or None
        op = {"t": "admit", "member": member, "name": name, "invite": key, "proof": b32(proof)}
        if cert is not None:
            op["cert"] = cert
        if member in state.members:                      # back after leaving or removal
            op["resume"] = lifecycle.resume_vector(self, state.id, member)
        self._write(state.id, op)
        return state.id

    def join_proof(self, code: str) -> tuple[str, bytes]:
        """(invite key, proof) that I hold an invite code: the code itself never leaves my node."""
        if len(normalize_code(code)) < 8:
            raise Invalid("an invite code has 12 letters and digits, like ABCD-EFGH-JKLM")
        secret = invite_key(code)
        key = b32(raw_public(secret))
        return key, secret.sign(invite_message(key, self.me))

    # -- crews -----------------------------------------------------------------------------------

    def create_crew(self, cid: str, name, purpose, members) -> dict:
        """POST /api/congregations/{cid}/crews: I am always a member."""
        state = self.congregation_state(cid)
        self._writable(state)
        name = _valid(check_text, name, "crew name", MAX_TITLE)
        purpose = _valid(check_text, purpose if purpose is not None else "", "crew purpose", MAX_TEXT, required=False)
        if members is None:
            members = []
        if not isinstance(members, list):
            raise Invalid("members must be a list of member ids")
        chosen = []
        for member in [self.me, *members]:
            _valid(check_member_id, member)
            if not self._is_active(state, member):
                raise Invalid(f"{member} is not an active member of this congregation")
            if member not in chosen:
                chosen.append(member)
        crew_id = self._genesis({"t": "genesis", "type": "crew", "congregation": cid, "members": chosen},
                                {"name": name, "purpose": purpose})
        return self.crew_view(crew_id)

    def crew_view(self, crew_id: str) -> dict:
        """GET /api/crews/{crew_id}."""
        crew = self.crew_state(crew_id)
        names = names_for(self.states, crew)
        changes = self.changes_view(crew, names)
        return {**views.crew_view(crew, names), "my_status": crew.members[self.me].status,
                "forks": changes["forks"], "void_entries": changes["void_entries"]}

    # -- membership over time (node/lifecycle.py) --------------------------------------------------

    def leave(self, doc_id: str) -> dict:
        """POST /api/congregations/{cid}/leave, /api/crews/{crew_id}/leave."""
        return lifecycle.leave(self, doc_id)

    def propose_removal(self, doc_id: str, member, reason) -> dict:
        """POST /api/congregations/{cid}/removals, /api/crews/{crew_id}/removals."""
        return lifecycle.propose_removal(self, doc_id, member, reason)

    def fork_congregation(self, cid: str, name, crews, members, purpose=None) -> dict:
        """POST /api/congregations/{cid}/fork."""
        return lifecycle.fork_congregation(self, cid, name, crews or [], members or [], purpose)

    def add_crew_member(self, crew_id: str, member) -> dict:
        """POST /api/crews/{crew_id}/members."""
        crew = self.crew_state(crew_id)
        self._writable(crew)
        member = _valid(check_member_id, member, "member_id")
        congregation = self.states.get(crew.congregation)
        if congregation is None or not self._is_active(congregation, member):
            raise Invalid("that member does not belong to this crew's congregation")
        if self._is_active(crew, member):
            raise Conflict("that member is in this crew already")
        op = {"t": "add", "member": member}
        if member in crew.members:                       # back after leaving or removal
            op["resume"] = lifecycle.resume_vector(self, crew_id, member)
        self._write(crew_id, op)
        return self.crew_view(crew_id)

    # -- agreements --------------------------------------------------------------------------------

    def propose(self, doc_id: str, title, text, review_by=None, kind="agreement", subject=None) -> dict:
        """POST .../agreements: open a consent round among the scope's active members."""
        state = self.states.get(doc_id)
        if state is None or self.me not in state.members:
            raise NotFound(f"no congregation or crew {doc_id} here")
        self._writable(state)
        title = _valid(check_text, title, "title", MAX_TITLE)
        text = _valid(check_text, text if text is not None else "", "text", MAX_TEXT, required=False)
        review_by = _valid(check_date, review_by, "review_by")
        entitled = [m for m in state.active_members() if m != subject]
        op = {"t": "propose", "agreement": None, "kind": kind, "title": title, "text": text,
              "review_by": review_by, "entitled": entitled}
        if subject:
            op["subject"] = subject
        entry = self._write(doc_id, op)
        return self.agreement_view(entry.op["agreement"])

    def find_agreement(self, aid: str):
        """(state, agreement) for an agreement I can see, else NotFound."""
        for state in self.states.values():
            agreement = state.agreements.get(aid)
            if agreement is not None and self.me in state.members:
                return state, agreement
        raise NotFound(f"no agreement {aid} here")

    def agreement_view(self, aid: str) -> dict:
        """GET /api/agreements/{aid}."""
        state, agreement = self.find_agreement(aid)
        return views.agreement_view(state, agreement, names_for(self.states, state))

    def respond(self, aid: str, response, reason="") -> dict:
        """POST /api/agreements/{aid}/responses."""
        state, agreement = self.find_agreement(aid)
        self._writable(state)
        if response not in ("consent", "object", "stand_aside"):
            raise Invalid("response must be consent, object or stand_aside")
        reason = _valid(check_text, reason or "", "reason", MAX_REASON, required=False)
        if response == "object" and not reason:
            raise Invalid("an objection needs a reason: say what would make it work for you")
        if self.me not in agreement.asked_in(agreement.current.hash):
            if agreement.kind == "removal":
                raise Forbidden("you are not among the members entitled to respond to this agreement")
            raise Forbidden(NOT_ASKED)
        self._not_retired(state, agreement)
        self._not_carried_out(state, agreement)
        self._write(state.id, {"t": "respond", "agreement": aid, "version": agreement.current.hash,
                               "response": response, "reason": reason})
        return self.agreement_view(aid)

    def revise(self, aid: str, title=KEEP, text=KEEP, review_by=KEEP) -> dict:
        """Edit an agreement's text: a new version, and a new consent round. What is not given
        (KEEP) stays as the current version has it."""
        state, agreement = self.find_agreement(aid)
        self._writable(state)
        current = agreement.current
        title = _valid(check_text, current.title if title is KEEP else title, "title", MAX_TITLE)
        text = current.text if text is KEEP else text
        text = _valid(check_text, text if text is not None else "", "text", MAX_TEXT, required=False)
        review_by = _valid(check_date, current.review_by if review_by is KEEP else review_by, "review_by")
        self._not_retired(state, agreement)
        self._not_carried_out(state, agreement)
        if (title, text, review_by) == (current.title, current.text, current.review_by):
            # A new round would ask everyone again for the very same text.
            raise Invalid("nothing changed: this is the current version's text")
        self._write(state.id, {"t": "revise", "agreement": aid, "title": title, "text": text, "review_by": review_by})
        return self.agreement_view(aid)

    def _not_retired(self, state: DocState, agreement) -> None:
        if views.agreement_status(state, agreement) == "retired":
            raise Conflict("this agreement is retired")

    def _not_carried_out(self, state: DocState, agreement) -> None:
        """Refuse to change a removal that has been carried out: its member is out, whatever
        its round says next (they can come back with a new invite)."""
        if agreement.kind == "removal" and any(x.agreement == agreement.id for x in state.exits.get(agreement.subject, ())):
            raise Conflict(f"this removal has been carried out: {state.name_of(agreement.subject)} is removed. "
                           "To have them back, invite them again")

    def retire(self, aid: str) -> dict:
        """Propose to retire an agreement: a new round on the same text, which, agreed like any
        other, retires it (it stays readable, no longer in force). Retiring what a group agreed
        is the group's decision, not one member's. A removal round is retired at once."""
        state, agreement = self.find_agreement(aid)
        self._writable(state)
        self._not_carried_out(state, agreement)
        if views.agreement_status(state, agreement) == "retired":
            return self.agreement_view(aid)
        if agreement.kind == "removal":
            # Dropping a removal keeps everyone in: anyone asked could block it by objecting anyway.
            self._write(state.id, {"t": "retire", "agreement": aid})
            return self.agreement_view(aid)
        current = agreement.current
        if current.retiring:
            raise Conflict("a proposal to retire this agreement is open already: answer it")
        self._write(state.id, {"t": "revise", "agreement": aid, "title": current.title, "text": current.text,
                               "review_by": current.review_by, "retire": True})
        return self.agreement_view(aid)

    # -- commitments -------------------------------------------------------------------------------

    def commit(self, crew_id: str, what, due=None, by=None) -> dict:
        """POST /api/crews/{crew_id}/commitments."""
        crew = self.crew_state(crew_id)
        self._writable(crew)
        what = _valid(check_text, what, "what", MAX_TITLE * 5)
        due = _valid(check_date, due, "due")
        by = by or self.me
        _valid(check_member_id, by, "by")
        if not self._is_active(crew, by):
            raise Invalid("a commitment must be by an active member of the crew")
        if gone_from_congregation(self.states, crew, by):
            raise Invalid(f"{names_for(self.states, crew).name_of(by)} is not in this crew's congregation: "
                          "the crew's records no longer reach them")
        entry = self._write(crew_id, {"t": "commit", "commitment": None, "what": what, "due": due, "by": by})
        return self.commitment_view(entry.op["commitment"])

    def find_commitment(self, commitment_id: str):
        """(crew state, commitment) for a commitment in one of my crews, else NotFound."""
        for state in self.states.values():
            found = state.commitments.get(commitment_id)
            if found is not None and state.type == "crew" and self.me in state.members:
                return state, found
        raise NotFound(f"no commitment {commitment_id} here")

    def commitment_view(self, commitment_id: str) -> dict:
        state, commitment = self.find_commitment(commitment_id)
        return views.commitment_view(commitment, names_for(self.states, state))

    def set_commitment_status(self, commitment_id: str, status) -> dict:
        """PATCH /api/commitments/{id}."""
        state, commitment = self.find_commitment(commitment_id)
        self._writable(state)
        if status not in ("open", "done", "released"):
            raise Invalid("status must be open, done or released")
        if commitment.status != status:
            self._write(state.id, {"t": "status", "commitment": commitment_id, "status": status})
        return self.commitment_view(commitment_id)

    # -- what is due -------------------------------------------------------------------------------

    def due_view(self) -> dict:
        """What needs me: my open commitments by due date, proposals awaiting me, reviews due.

        Assembled from each document's part (`views.due_in`, remembered per revision of the
        document), so asking again costs little when few documents changed."""
        today = dt.date.today().isoformat()
        commitments, waiting, reviews = [], [], []
        for state in list(self.states.values()):
            if self.me not in state.members or self.cut_off(state):
                continue
            names = names_for(self.states, state)
            part = views.due_in(state, self.me, today)
            for c in part["commitments"]:
                # the keys in the order commitment_view(commitment, names) gives them, then ours
                view = {k: v for k, v in c.items() if k not in ("overdue", "scope")}
                commitments.append({**view, "by_name": names.name_of(c["by"]), "overdue": c["overdue"],
                                    "scope": c["scope"]})
            waiting += [dict(a) for a in part["awaiting_response"]]
            reviews += [dict(a) for a in part["reviews_due"]]
        commitments.sort(key=lambda c: (c["due"] or "9999-99-99", c["created_at"]))
        return {"commitments": commitments, "awaiting_response": waiting, "reviews_due": reviews}


def _valid(check, *args, **kwargs):
    """Run a rules check, turning its refusal into a 400 for the API."""
    try:
        return check(*args, **kwargs)
    except Refused as exc:
        raise Invalid(str(exc)) from None


def summarize(entry, state: DocState, names: DocState) -> str:
    """One line saying what an entry did, for the history. An entry held as void was never
    checked against the rules (a former member's, say): its fields may be anything."""
    try:
        return _summary(entry, state, names)
    except (KeyError, TypeError, AttributeError):
        return f"wrote a “{entry.op['t']}” entry that does not hold together"


def _text(op: dict, key: str, default: str | None = None) -> str:
    """A text field of an operation, for a summary; raises TypeError when it is not one."""
    value = op.get(key, default)
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a text")
    return value


def _for(note: str | None) -> str:
    return f" for {note}" if note else ""


def _summary(entry, state: DocState, names: DocState) -> str:
    op = entry.op
    kind = op["t"]
    agreement = state.agreements.get(op.get("agreement", ""))
    title = agreement.current.title if agreement else "an agreement"
    commitment = state.commitments.get(op.get("commitment", ""))
    what = _text(commitment.first[1].op, "what") if commitment else "a commitment"
    return {
        "genesis": lambda: (f"split “{state.meta_value('name')}” off from “{_text(op['forked_from'], 'name', '')}”, "
                            f"with {views.plural(len(op['members']), 'member')} and {views.plural(len(op['crews']), 'crew')}"
                            if op.get("forked_from") else f"created the {state.type} “{state.meta_value('name')}”"),
        "name": lambda: f"set their name to “{_text(op, 'name')}”",
        "leave": lambda: f"left the {state.type}",
        "cut": lambda: f"carried out the agreed removal of {names.name_of(_text(op, 'member'))}",
        "split": lambda: (f"split off the congregation “{_text(op, 'name', '')}”, with "
                          + ", ".join(names.name_of(m) for m in op["members"])
                          + (f" and {views.plural(len(op['crews']), 'crew')}" if op.get("crews") else "")),
        "move": lambda: (f"moved the crew to “{names.meta_value('name')}”" if names.id == op["congregation"]
                         else "moved the crew to another congregation"),
        "retire_device": lambda: "retired one of their devices",
        "device": lambda: "started using another device",
        "meta": lambda: "edited the name or purpose",
        "invite": lambda: "created an invite" + _for(_text(op, "note", "")),
        "withdraw": lambda: "withdrew an invite" + _for(state.invites.get(_text(op, "invite"), {}).get("note")),
        "admit": lambda: f"admitted {names.name_of(_text(op, 'member'))}" + (
            " with a code that had been withdrawn (a node that had not heard of it yet let them in)"
            if _text(op, "invite") in state.withdrawn else ""),
        "add": lambda: f"added {names.name_of(_text(op, 'member'))} to the crew",
        "propose": lambda: f"proposed “{_text(op, 'title')}”",
        "revise": lambda: (f"proposed to retire “{_text(op, 'title')}”" if op.get("retire") is True
                           else f"revised “{_text(op, 'title')}”"),
        "respond": lambda: f"responded {_text(op, 'response').replace('_', ' ')} to “{title}”",
        "retire": lambda: f"retired “{title}”",
        "commit": lambda: f"committed {names.name_of(_text(op, 'by'))} to “{_text(op, 'what')}”",
        "status": lambda: f"marked “{what}” {_text(op, 'status')}",
    }.get(kind, lambda: kind)()
