import { Migration } from "@mikro-orm/migrations";

/** The lifecycle rows, their change log, and what Accept and Heartbeat keep. */
export class Migration20261203000000 extends Migration {
  override async up(): Promise<void> {
    this.addSql(`
      create table decky_lifecycle (
        id uuid primary key,
        decky_name text not null,
        host_uuid uuid null,
        operation text not null
          constraint decky_lifecycle_operation_check
          check (operation in ('deploy', 'mutate')),
        status text not null
          constraint decky_lifecycle_status_check
          check (status in ('pending', 'running', 'succeeded', 'failed')),
        error text null
          constraint decky_lifecycle_error_check
          check (char_length(error) <= 2000 and (error is null or status = 'failed')),
        started_at timestamptz(3) not null,
        updated_at timestamptz(3) not null,
        completed_at timestamptz(3) null
          constraint decky_lifecycle_completed_at_check
          check ((completed_at is not null) = (status = any (array['succeeded', 'failed']))),
        revision bigint not null
      )`);
    this.addSql(
      "create index decky_lifecycle_decky_name_index on decky_lifecycle (decky_name)",
    );
    this.addSql(
      "create index decky_lifecycle_host_uuid_index on decky_lifecycle (host_uuid)",
    );
    this.addSql(
      "create index decky_lifecycle_operation_index on decky_lifecycle (operation)",
    );
    this.addSql(
      "create index decky_lifecycle_status_index on decky_lifecycle (status)",
    );
    this.addSql(
      "create index decky_lifecycle_started_at_id_index on decky_lifecycle (started_at, id)",
    );
    // The one-open-row rule: at most one PENDING or RUNNING row per decky and
    // operation, whatever races above it.
    this.addSql(`
      create unique index decky_lifecycle_one_open_row
        on decky_lifecycle (decky_name, operation)
        where status in ('pending', 'running')`);
    // The state machine, checked on every update so that no statement, ours
    // or an operator's, can move a terminal row or skip a state.
    this.addSql(`
      create function decky_lifecycle_check_move() returns trigger
      language plpgsql as $$
      begin
        if old.status in ('succeeded', 'failed') then
          raise exception 'lifecycle row % is % and cannot change', old.id, old.status
            using errcode = 'check_violation';
        end if;
        if new.status <> old.status and not (
          (old.status = 'pending' and new.status in ('running', 'succeeded', 'failed'))
          or (old.status = 'running' and new.status in ('succeeded', 'failed'))
        ) then
          raise exception 'lifecycle row % cannot move from % to %', old.id, old.status, new.status
            using errcode = 'check_violation';
        end if;
        return new;
      end
      $$`);
    this.addSql(`
      create trigger decky_lifecycle_check_move
        before update on decky_lifecycle
        for each row execute function decky_lifecycle_check_move()`);

    this.addSql(`
      create table lifecycle_change (
        revision bigint primary key,
        lifecycle_id uuid not null
          constraint lifecycle_change_lifecycle_id_foreign
          references decky_lifecycle (id) on update cascade,
        decky_name text not null,
        host_uuid uuid null,
        operation text not null,
        status text not null,
        error text null,
        started_at timestamptz(3) not null,
        updated_at timestamptz(3) not null,
        completed_at timestamptz(3) null
      )`);
    this.addSql(
      "create index lifecycle_change_lifecycle_id_index on lifecycle_change (lifecycle_id)",
    );
    this.addSql(`
      create table lifecycle_revision (
        id integer primary key constraint lifecycle_revision_single check (id = 1),
        value bigint not null,
        pruned_through bigint not null
      )`);
    this.addSql(
      "insert into lifecycle_revision (id, value, pruned_through) values (1, 0, 0)",
    );

    this.addSql(`
      create table accept_request (
        request_id text primary key,
        body_hash text not null,
        response bytea not null,
        created_at timestamptz(3) not null
      )`);
    this.addSql(
      "create index accept_request_created_at_index on accept_request (created_at)",
    );
    this.addSql(`
      create table worker_host (
        host_uuid uuid primary key,
        agent_version text not null,
        first_seen_at timestamptz(3) not null,
        last_heartbeat_at timestamptz(3) not null
      )`);
    this.addSql(`
      create table service_secret (
        name text primary key,
        value bytea not null
      )`);
  }
}
