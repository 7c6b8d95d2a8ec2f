"""The database tables; their history lives in store/migrations."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    """An API key, kept only as its SHA-256 hash and the prefix shown to people."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class LocalModel(Base):
    """A GGUF file the operator added with ``emporion models add``."""

    __tablename__ = "local_models"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    context_length: Mapped[int] = mapped_column(Integer)
    has_chat_template: Mapped[bool] = mapped_column(Boolean)
    architecture: Mapped[str] = mapped_column(String(100))
    license: Mapped[str] = mapped_column(String(200))
    release: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[int] = mapped_column(BigInteger)


class Account(Base):
    """A ledger account. Customer accounts belong to an organization; the others are the
    operator's books (cash received, free grants, amounts owed to providers, margins)."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # customer, cash, grants, provider, operator, reseller
    org_id: Mapped[str | None] = mapped_column(ForeignKey("organizations.id"), nullable=True, index=True)
    balance_nanos: Mapped[int] = mapped_column(BigInteger, default=0)  # the sum of its entries, kept in step


class Posting(Base):
    """One balanced movement of money; (request_id, kind) is unique, which makes charges idempotent."""

    __tablename__ = "postings"
    __table_args__ = (UniqueConstraint("request_id", "kind", name="uq_postings_request_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20))  # topup, grant, charge, refund, expiry
    request_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Entry(Base):
    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    posting_id: Mapped[int] = mapped_column(ForeignKey("postings.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount_nanos: Mapped[int] = mapped_column(BigInteger)  # positive: into the account


class Hold(Base):
    """A reservation of a request's worst-case cost on a customer's balance until it settles."""

    __tablename__ = "holds"

    request_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount_nanos: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(10), index=True)  # open, settled, released, expired
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
