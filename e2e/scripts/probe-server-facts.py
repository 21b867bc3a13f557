#!/usr/bin/env python3
"""Probe a MongoDB-protocol server for the behaviours mongoferry depends on.

Usage: probe-server-facts.py mongodb://127.0.0.1:PORT/

Writes into database `probe_facts` only (dropped at the start). Prints one line per fact:
`fact: observed`. Used to keep docs/known-differences.md honest; re-run it after upgrading
the test servers (SecantusDB) or against a real mongod to compare.
"""
import math
import sys
import uuid

import bson
import pymongo
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure, PyMongoError

uri = sys.argv[1] if len(sys.argv) > 1 else "mongodb://127.0.0.1:27017/"
client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
db = client["probe_facts"]
client.drop_database("probe_facts")


def fact(name, value):
    print(f"{name}: {value}", flush=True)


def attempt(name, fn):
    try:
        fact(name, fn())
    except OperationFailure as e:
        fact(name, f"ERROR code={e.code} {e.details.get('codeName', '')}: {str(e)[:160]}")
    except PyMongoError as e:
        fact(name, f"ERROR {type(e).__name__}: {str(e)[:160]}")


fact("buildInfo.version", client.admin.command("buildInfo").get("version"))
hello = client.admin.command("hello")
fact("hello.setName/maxWireVersion", (hello.get("setName"), hello.get("maxWireVersion")))

ping = client.admin.command("ping")
fact("ping has operationTime", "operationTime" in ping)
fact("ping has $clusterTime", "$clusterTime" in ping)

# --- _id edge cases -------------------------------------------------------------------
c = db["ids"]
c.insert_many(
    [
        {"_id": float("nan"), "k": "nan"},
        {"_id": 1, "k": "int"},
        {"_id": 4.5, "k": "double"},
        {"_id": bson.Int64(7), "k": "long"},
        {"_id": "s", "k": "string"},
        {"_id": {"a": 1}, "k": "doc"},
        {"_id": None, "k": "null"},
        {"_id": bson.ObjectId(), "k": "oid"},
        {"_id": bson.Binary(uuid.uuid4().bytes, 4), "k": "uuid"},
    ]
)
attempt("find {_id: NaN} matches", lambda: [d["k"] for d in c.find({"_id": float("nan")})])
attempt("find {_id: {$lt: 5}}", lambda: sorted(d["k"] for d in c.find({"_id": {"$lt": 5}})))
attempt("find {_id: {$gt: MinKey, $lt: MaxKey}} count",
        lambda: len(list(c.find({"_id": {"$gt": bson.MinKey(), "$lt": bson.MaxKey()}}))))
attempt("sort by _id order", lambda: [d["k"] for d in c.find().sort("_id", 1)])
attempt("find {_id: {$type: [number]}}", lambda: sorted(d["k"] for d in c.find({"_id": {"$type": "number"}})))
attempt("find {_id: {$type: ['double','string']}}",
        lambda: sorted(d["k"] for d in c.find({"_id": {"$type": ["double", "string"]}})))
attempt("find min/max + hint _id",
        lambda: [d["k"] for d in c.find().min([("_id", 1)]).max([("_id", 100)]).hint([("_id", 1)])])
attempt("delete {_id: NaN}", lambda: c.delete_one({"_id": float("nan")}).deleted_count)
attempt("replace {_id: {a:1}}", lambda: c.replace_one({"_id": {"a": 1}}, {"k": "doc2"}).modified_count)
attempt("$natural hint", lambda: len(list(c.find().hint([("$natural", 1)]))))
attempt("collection count", lambda: c.count_documents({}))

# --- change stream resume token -------------------------------------------------------
def token_probe():
    with client.watch(show_expanded_events=True, max_await_time_ms=500) as s:
        db["cs"].insert_one({"_id": 1, "x": 1})
        db["cs"].update_one({"_id": 1}, {"$set": {"x": 2}})
        db["cs"].update_one({"_id": 1}, [{"$set": {"y": 3}}])
        out = []
        for _ in range(6):
            ev = s.try_next()
            if ev is None:
                continue
            out.append((ev["operationType"], ev["_id"].get("_data", "")[:40], list(ev.keys())))
        return out


attempt("change stream events (op, _data prefix, keys)", token_probe)

# --- oplog ----------------------------------------------------------------------------
def oplog():
    first = client.local["oplog.rs"].find_one(sort=[("$natural", 1)])
    last = client.local["oplog.rs"].find_one(sort=[("$natural", -1)])
    return {"first.ts": first and first.get("ts"), "last.ts": last and last.get("ts"),
            "first keys": first and list(first.keys())}


attempt("local.oplog.rs readable", oplog)

# --- listCollections shapes -----------------------------------------------------------
def setup_collections():
    db.create_collection("capped", capped=True, size=1 << 20, max=100)
    db.create_collection("coll", collation={"locale": "en", "strength": 2})
    db.create_collection("valid", validator={"n": {"$type": "number"}},
                         validationLevel="moderate", validationAction="warn")
    db.create_collection("view", viewOn="coll", pipeline=[{"$match": {"x": 1}}])
    db.command({"create": "clustered", "clusteredIndex": {"key": {"_id": 1}, "unique": True}})
    return "ok"


attempt("create special collections", setup_collections)
for info in db.list_collections():
    if info["name"] in ("capped", "coll", "valid", "view", "clustered"):
        fact(f"listCollections {info['name']}",
             {k: v for k, v in info.items() if k != "idIndex"} | {"idIndex": info.get("idIndex")})

# --- indexes and collMod (each change on its own index, spec read back after it) -------
ix = db["ix"]
ix.insert_one({"_id": 1, "a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "t": None})
for field in "abcde":
    ix.create_index(field, name=f"{field}_1")
ix.create_index("t", name="t_ttl", expireAfterSeconds=3600)
ix.create_index("u", name="u_unique", unique=True)
attempt("createIndex hidden:true", lambda: ix.create_index("h", name="h_hidden", hidden=True))


def spec(name):
    return {k: v for k, v in next(i for i in ix.list_indexes() if i["name"] == name).items()
            if k not in ("v", "key", "name")}


def coll_mod(index):
    try:
        db.command("collMod", "ix", index=index)
        return f"ok -> {spec(index['name'])}"
    except OperationFailure as e:
        return f"ERROR code={e.code}: {str(e)[:120]} -> {spec(index['name'])}"


fact("spec after createIndex hidden:true", spec("h_hidden"))
fact("collMod hidden:true", coll_mod({"name": "a_1", "hidden": True}))
fact("collMod hidden:false", coll_mod({"name": "h_hidden", "hidden": False}))
fact("collMod expireAfterSeconds on TTL", coll_mod({"name": "t_ttl", "expireAfterSeconds": 2147483647}))
fact("collMod expireAfterSeconds on non-TTL", coll_mod({"name": "b_1", "expireAfterSeconds": 100}))
fact("collMod unique:true without prepareUnique", coll_mod({"name": "c_1", "unique": True}))
fact("collMod prepareUnique:true", coll_mod({"name": "d_1", "prepareUnique": True}))
fact("collMod unique:true after prepareUnique", coll_mod({"name": "d_1", "unique": True}))
fact("collMod unique:false", coll_mod({"name": "u_unique", "unique": False}))
attempt("collMod validator", lambda: db.command("collMod", "ix", validator={"a": {"$exists": True}}))
attempt("listCollections ix options", lambda: next(db.list_collections(filter={"name": "ix"}))["options"])

# --- admin commands ---------------------------------------------------------------------
attempt("dbHash", lambda: {k: v for k, v in db.command("dbHash").items() if k in ("md5", "collections")})
attempt("setUserWriteBlockMode", lambda: client.admin.command({"setUserWriteBlockMode": 1, "global": False}))
attempt("appendOplogNote", lambda: client.admin.command({"appendOplogNote": 1, "data": {"probe": 1}}))
attempt("connectionStatus showPrivileges",
        lambda: client.admin.command({"connectionStatus": 1, "showPrivileges": True}).get("authInfo"))
attempt("serverStatus keys", lambda: sorted(client.admin.command("serverStatus").keys())[:30])
attempt("replSetGetStatus", lambda: client.admin.command("replSetGetStatus").get("members", [{}])[0].get("optime"))
attempt("getParameter featureCompatibilityVersion",
        lambda: client.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1}))
attempt("collStats", lambda: {k: v for k, v in db.command("collStats", "ix").items() if k in ("count", "size", "avgObjSize")})
attempt("$collStats", lambda: list(ix.aggregate([{"$collStats": {"count": {}}}])))
attempt("$sample", lambda: len(list(db["ids"].aggregate([{"$sample": {"size": 2}}]))))
attempt("splitVector", lambda: db.command({"splitVector": "probe_facts.ids", "keyPattern": {"_id": 1}, "maxChunkSizeBytes": 1024}))
attempt("$bucketAuto on _id", lambda: list(db["ids"].aggregate([{"$bucketAuto": {"groupBy": "$_id", "buckets": 2}}])))
def _unordered():
    try:
        db["bw"].insert_many([{"_id": 1}, {"_id": 1}, {"_id": 2}], ordered=False)
    except pymongo.errors.BulkWriteError as e:
        return f"nInserted={e.details.get('nInserted')} count={db['bw'].count_documents({})}"
    return "no error"


attempt("insert_many ordered=false with a duplicate: inserted", _unordered)

client.drop_database("probe_facts")
