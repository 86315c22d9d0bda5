// A real aedes MQTT broker (3.1.1) on 127.0.0.1:<port>, for the test suite only.
//
//   node aedes_broker.js PORT [--user NAME:PASSWORD] [--deny-subscribe TOPIC]...
//
// --user switches anonymous access off; --deny-subscribe answers a SUBSCRIBE to
// TOPIC with SUBACK 0x80 (what an ACL that forbids reading it does). Retained
// messages live in memory, so a restart forgets them. Logs one line per event
// on stdout; stops on SIGTERM.
import net from 'node:net'
import { Aedes } from 'aedes'

const args = process.argv.slice(2)
const port = Number(args.shift())
const users = new Map()
const denied = new Set()
while (args.length > 0) {
  const flag = args.shift()
  const value = args.shift()
  if (flag === '--user') {
    const at = value.indexOf(':')
    users.set(value.slice(0, at), value.slice(at + 1))
  } else if (flag === '--deny-subscribe') {
    denied.add(value)
  } else {
    console.error(`unknown option ${flag}`)
    process.exit(2)
  }
}

const broker = await Aedes.createBroker()
if (users.size > 0) {
  broker.authenticate = (client, username, password, callback) => {
    const ok = users.has(username) && users.get(username) === String(password ?? '')
    if (!ok) console.log(`refused login of ${client.id} as ${username}`)
    callback(null, ok)
  }
}
broker.authorizeSubscribe = (client, sub, callback) => {
  if (denied.has(sub.topic)) {
    console.log(`denied subscription of ${client.id} to ${sub.topic}`)
    callback(null, null)
  } else {
    callback(null, sub)
  }
}
broker.on('client', (client) => console.log(`client ${client.id} connected`))
broker.on('clientDisconnect', (client) => console.log(`client ${client.id} disconnected`))
broker.on('clientError', (client, err) => console.log(`client ${client.id} error: ${err.message}`))
broker.on('publish', (packet, client) => {
  if (client) console.log(`publish from ${client.id} qos=${packet.qos} retain=${packet.retain} ${packet.topic}`)
})

const server = net.createServer(broker.handle)
server.listen(port, '127.0.0.1', () => console.log(`aedes listening on 127.0.0.1:${port}`))
// Like a broker that is stopped: every client sees its socket close at once.
process.on('SIGTERM', () => process.exit(0))
